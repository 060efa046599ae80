"""Graph transformations applied after the graph is built, one module per concern."""
