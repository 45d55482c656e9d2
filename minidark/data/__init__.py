"""Data loaders: MNIST IDX files, darknet image lists, .data files."""
