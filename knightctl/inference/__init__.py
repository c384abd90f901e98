"""Using a trained model: `knightctl predict` and `knightctl evaluate` on new rows of a table."""
