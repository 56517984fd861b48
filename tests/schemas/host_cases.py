"""S2S URLs by host, shared by the tests of every place that checks one (issue 8, defect 8).

Each non-canonical spelling comes with a word its refusal must contain, wherever it is refused: when
the rule is published (`postbacks.N.url`), and by a dispatcher that still receives one.
"""

from __future__ import annotations

import pytest

NON_CANONICAL_URLS = [
    # numbers that WHATWG and inet_aton read as 127.0.0.1
    pytest.param("http://2130706433/", "numeric", id="decimal-integer"),
    pytest.param("http://127.1/", "numeric", id="short-form"),
    pytest.param("http://127.0.1/", "numeric", id="three-parts"),
    pytest.param("http://0177.0.0.1/", "numeric", id="octal"),
    pytest.param("http://0x7f.0.0.1/", "numeric", id="hex-octet"),
    pytest.param("http://0x7f000001/", "numeric", id="hex-integer"),
    pytest.param("http://127.0.0.01/", "numeric", id="leading-zero"),
    pytest.param("http://256.1.1.1/", "numeric", id="octet-over-255"),
    pytest.param("http://1.2.3.4.5/", "numeric", id="five-parts"),
    pytest.param("http://tracker.example.123/", "numeric", id="name-ending-in-a-number"),
    pytest.param("http://tracker.example.0x1/", "numeric", id="name-ending-in-hex"),
    # where the authority ends, and what it carries
    pytest.param("http://evil.example\\@good.example/", "backslash", id="backslash-before-at"),
    pytest.param("http://good.example\\evil.example/", "backslash", id="backslash"),
    pytest.param("http://user:s3cr3t@tracker.example/", "userinfo", id="userinfo"),
    pytest.param("http://user@tracker.example/", "userinfo", id="user-only"),
    pytest.param("http://@tracker.example/", "userinfo", id="empty-userinfo"),
    pytest.param("http://track\u00a0er.example/", "whitespace", id="no-break-space"),
    pytest.param("http://tracker.example\u2028/", "whitespace", id="line-separator"),
    pytest.param("http://127.0.0.%31/", "'%'", id="percent-encoded"),
    pytest.param("http://\uff11\uff12\uff17.0.0.1/", "ASCII", id="fullwidth-digits"),
    pytest.param("http://b\u00fccher.example/", "punycode", id="idn-not-in-punycode"),
    # names
    pytest.param("http://:8080/", "no host", id="empty-host"),
    pytest.param("http://tracker..example/", "empty label", id="doubled-dot"),
    pytest.param("http://tracker.example./", "empty label", id="trailing-dot"),
    pytest.param("http://.tracker.example/", "empty label", id="leading-dot"),
    pytest.param("http://-tracker.example/", "label", id="label-starts-with-hyphen"),
    pytest.param("http://tracker!.example/", "label", id="punctuation"),
    pytest.param(f"http://{'a' * 64}.example/", "label", id="label-over-63"),
    pytest.param(f"http://{'a.' * 127}example/", "253", id="name-over-253"),
    # IPv6
    pytest.param("http://[fe80::1%25eth0]/", "'%'", id="ipv6-zone-id"),
    pytest.param("http://[::1]x/", "IPv6", id="ipv6-trailing-text"),
    pytest.param("http://[v1.fe]/", "IPv6", id="ip-future"),
    pytest.param("http://[2001:db8::1]]/", "IPv6", id="ipv6-extra-bracket"),
    # ports
    pytest.param("http://tracker.example:/", "port", id="empty-port"),
    pytest.param("http://tracker.example:0/", "port", id="port-zero"),
    pytest.param("http://tracker.example:080/", "port", id="port-leading-zero"),
    pytest.param("http://[2001:db8::1]:/", "port", id="ipv6-empty-port"),
]

CANONICAL_URLS = [
    pytest.param("http://tracker.example/", "tracker.example", id="name"),
    pytest.param("https://Tracker.Example/", "tracker.example", id="upper-case-name"),
    pytest.param("http://1.2.3.4/", "1.2.3.4", id="ipv4"),
    pytest.param("http://0.0.0.0/", "0.0.0.0", id="ipv4-zeros"),
    pytest.param("http://255.255.255.255:65535/", "255.255.255.255", id="ipv4-max-and-max-port"),
    pytest.param("http://[2001:db8::1]/", "2001:db8::1", id="ipv6"),
    pytest.param("http://[2001:DB8:0:0:0:0:0:1]:8443/", "2001:db8:0:0:0:0:0:1", id="ipv6-long-form-and-port"),
    pytest.param("http://[::ffff:192.0.2.1]/", "::ffff:192.0.2.1", id="ipv4-mapped-ipv6"),
    pytest.param("http://a-b.example:8080/", "a-b.example", id="hyphen-and-port"),
    pytest.param("http://xn--bcher-kva.example/", "xn--bcher-kva.example", id="idn-in-punycode"),
    pytest.param("http://pb_1.tracker.example:1/", "pb_1.tracker.example", id="underscore-and-port-1"),
    pytest.param("http://0x7f.example/", "0x7f.example", id="hex-looking-label-not-last"),
    pytest.param("http://1.2.3.example/", "1.2.3.example", id="numeric-labels-not-last"),
    pytest.param(f"http://{'a' * 63}.example/", f"{'a' * 63}.example", id="label-of-63"),
]
