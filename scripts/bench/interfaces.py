"""TODO: interfaces benchmark (not written yet)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> None:
    raise SystemExit("the interfaces benchmark is not written yet")
