"""Test fixture for minidark's entry-point plugin loading (see layers.py)."""
