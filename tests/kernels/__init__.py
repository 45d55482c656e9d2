"""Tests of minidark/kernels (a package, so that test file names may repeat across folders)."""
