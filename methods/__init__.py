"""Built-in methods, one file each; importing a file registers its method."""
