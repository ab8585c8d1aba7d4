"""Life after deployment: telemetry -> labelling agents -> accuracy proxy -> retraining ->
install gate -> atomic install (``homunculus adapt``)."""
