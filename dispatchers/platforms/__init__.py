"""Pure request builders and response classifiers for the ad platforms.

One module per platform (`google_ads`, `meta`, `tiktok`, `microsoft_ads`), each with the same shape:
`MAX_BATCH`, `batch_key(postback)`, `precheck(postback, now)`, `build_request(postbacks, ...)` and
`classify_response(response, postbacks)`. None of them does I/O or reads the clock; the dispatcher
sends the HttpRequest through its Transport. Shared helpers live in `common`; each platform's API
version (a `build_request` argument), its default and known sunset dates in `api_versions`.
"""
