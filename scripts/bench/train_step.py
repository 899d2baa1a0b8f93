"""TODO: train_step benchmark (not written yet)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> None:
    raise SystemExit("the train_step benchmark is not written yet")
