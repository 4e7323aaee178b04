"""The Memory Interchange Protocol: its generated code (v1/) and the formats both daemon and client use."""
