"""Tests of minidark/cfg and the stock cfgs (a package, so that test file names may repeat across folders)."""
