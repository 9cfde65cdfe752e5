"""The quality test bench (the original's Testing/ folder, rebuilt) and the storage plan."""
