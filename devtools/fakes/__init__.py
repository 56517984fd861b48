"""Stand-ins that behave like the outside world (ad platforms, OAuth, S2S receivers), served on loopback."""
