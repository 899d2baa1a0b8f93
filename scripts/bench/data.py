"""TODO: data benchmark (not written yet)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> None:
    raise SystemExit("the data benchmark is not written yet")
