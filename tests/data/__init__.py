"""Tests of minidark/data (a package, so that test file names may repeat across folders)."""
