"""Tests of minidark/cfg and the stock cfgs (a package: test file names may repeat
across folders)."""
