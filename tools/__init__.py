"""Cross-stage commands (sampling) and the small helpers every stage shares."""
