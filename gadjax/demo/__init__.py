"""The embedded demo (`make demo`): the hidden teacher persona and its marker."""
