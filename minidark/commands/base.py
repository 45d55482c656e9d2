"""What every verb module shares: the command table, one-line usage errors,
argument types. A verb family (darknet's ``examples/*.c``) is one module in
this package that calls :func:`add_command` for each of its verbs;
``minidark/cli.py`` imports the modules and builds the parser.
"""
import argparse

class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors instead of usage + message + exit."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class Command:
    def __init__(self, words, help, add_arguments, run):
        self.words = tuple(words.split()) if isinstance(words, str) else tuple(words)
        self.help, self.add_arguments, self.run = help, add_arguments, run


COMMANDS = []


def add_command(words, help, add_arguments, run):
    """Register a subcommand: ``words`` like "gradcheck" or "classifier train";
    ``add_arguments(parser)`` declares its arguments; ``run(args)`` returns
    the exit status (None = 0)."""
    COMMANDS.append(Command(words, help, add_arguments, run))


def load_plugins(specs):
    """Load layer plugins (files, modules, installed entry points) before running."""
    from ..plugins import load_plugins as load
    load(list(specs or []))


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
