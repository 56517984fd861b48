"""Delivery of matched postbacks to traffic sources (S2S) and ad platforms.

Pure request builders and response classifiers per destination; one narrow HTTP boundary
(`http_boundary.Transport`) so the same delivery code runs against a real platform, a local fake
server or an in-process handler.
"""
