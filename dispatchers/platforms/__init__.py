"""Pure request builders and response classifiers for the ad platforms.

One module per platform (`google_ads`, `meta`, `tiktok`, `microsoft_ads`), each with the same shape,
the `Platform` protocol of `registry` (which maps each kind of `schemas/kinds.py` to its module):
`KIND`, `MAX_BATCH`, `USES_OAUTH`, `batch_key(postback)`, `precheck(postback, now)`,
`build_request(postbacks, ...)` and `classify_response(response, postbacks)`. None of them does I/O or
reads the clock; the scheduler sends the HttpRequest through its Transport. Shared helpers live in
`common` (a Retry-After is read by `dispatchers/core/retry_policy`, capped); each platform's API
version (a `build_request` argument), its default and known sunset dates in `api_versions`.
"""
