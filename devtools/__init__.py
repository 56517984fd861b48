"""Development tools, not part of the installed package: `make demo` and the stand-ins for the outside
world (ad platforms, OAuth, S2S receivers) that both the demo and the tests use."""
