"""The tool runner: runs the model's HTTP tool calls, apart from the audio path."""
