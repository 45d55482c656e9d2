"""Tests of minidark/layers (a package, so that test file names may repeat across folders)."""
