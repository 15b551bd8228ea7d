"""Command-line entry points (argparse shells over library calls): train, convert, predict, plot."""
