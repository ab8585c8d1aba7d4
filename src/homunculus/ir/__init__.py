"""The typed, target-independent IR: the quantised model and the integer table pipeline."""
