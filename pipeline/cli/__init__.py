"""The pipeline's commands (`ovrsis categories|annotate|view`, commands) and the exit rule every command
of the project follows (terminal)."""
