"""Weights: conversion rules (convert), file formats (files, npz), the hub (hub), errors."""
