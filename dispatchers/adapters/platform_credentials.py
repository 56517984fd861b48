"""Platform credentials: a rule entry's `credentials` names a secret; this resolves it into the tokens
of one request (an OAuth access token for Google Ads and Microsoft Advertising, cached and shared by
`OAuthTokenCache`), and knows each platform's base URL."""

from __future__ import annotations

from dispatchers.adapters.secrets import SecretError, SecretStore
from dispatchers.core.outcome import Outcome, Verdict
from dispatchers.core.secret import Secret
from dispatchers.engine.batch_scheduler import RequestCredentials
from dispatchers.engine.oauth import OAuthError, OAuthTokenCache
from dispatchers.engine.scheduler_core import CredentialsUnavailable
from dispatchers.platforms.registry import platform

OAUTH_SECRET_KEYS = ("developer_token", "client_id", "client_secret", "refresh_token")
TOKEN_SECRET_KEYS = ("access_token",)

# The real endpoints; deployments and tests override them (GOOGLE_ADS_BASE_URL, ... in the settings).
DEFAULT_GOOGLE_ADS_BASE_URL = "https://googleads.googleapis.com"
DEFAULT_META_BASE_URL = "https://graph.facebook.com"
DEFAULT_TIKTOK_BASE_URL = "https://business-api.tiktok.com"
DEFAULT_MICROSOFT_ADS_BASE_URL = "https://campaign.api.bingads.microsoft.com"
DEFAULT_OAUTH_TOKEN_URL_GOOGLE = "https://oauth2.googleapis.com/token"
DEFAULT_OAUTH_TOKEN_URL_MICROSOFT = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
# Microsoft's identity platform wants the scope on every refresh; Google keeps the one first granted.
MICROSOFT_ADS_SCOPE = "https://ads.microsoft.com/msads.manage offline_access"


class PlatformCredentials:
    """Resolves a rule entry's `credentials` secret NAME into tokens, and knows each platform's base URL.

    Google Ads and Microsoft Ads secrets are `{"developer_token", "client_id", "client_secret",
    "refresh_token"}` and yield an OAuth access token (cached and shared by `OAuthTokenCache`); Meta and
    TikTok secrets are `{"access_token"}`. Nothing here reads the environment: URLs are arguments.
    """

    def __init__(
        self,
        secrets: SecretStore,
        oauth: OAuthTokenCache,
        *,
        google_ads_base_url: str = DEFAULT_GOOGLE_ADS_BASE_URL,
        meta_base_url: str = DEFAULT_META_BASE_URL,
        tiktok_base_url: str = DEFAULT_TIKTOK_BASE_URL,
        microsoft_ads_base_url: str = DEFAULT_MICROSOFT_ADS_BASE_URL,
        oauth_token_url_google: str = DEFAULT_OAUTH_TOKEN_URL_GOOGLE,
        oauth_token_url_microsoft: str = DEFAULT_OAUTH_TOKEN_URL_MICROSOFT,
    ) -> None:
        self._secrets = secrets
        self._oauth = oauth
        self._base_urls = {
            "google_ads": google_ads_base_url,
            "meta": meta_base_url,
            "tiktok": tiktok_base_url,
            "microsoft_ads": microsoft_ads_base_url,
        }
        self._token_urls = {"google_ads": oauth_token_url_google, "microsoft_ads": oauth_token_url_microsoft}

    def base_url(self, kind: str) -> str:
        return self._base_urls[kind]

    async def resolve(self, kind: str, secret_name: object) -> RequestCredentials:
        """The tokens for one request; raises CredentialsUnavailable (REJECTED or RETRY) when there are none."""
        oauth = platform(kind).USES_OAUTH
        required = OAUTH_SECRET_KEYS if oauth else TOKEN_SECRET_KEYS
        if not isinstance(secret_name, str) or not secret_name:
            raise CredentialsUnavailable(_missing("the rule entry names no credentials secret"))
        try:
            # SecretError messages name the secret and where it was looked for, never its value.
            values = self._secrets.get_object(secret_name, required).reveal()
        except SecretError as exc:
            raise CredentialsUnavailable(_missing(str(exc))) from None
        if not all(isinstance(values[key], str) for key in required):
            raise CredentialsUnavailable(_missing(f"secret {secret_name!r}: {', '.join(required)} must be strings"))
        if not oauth:
            return RequestCredentials(values["access_token"])
        token_url = self._token_urls[kind]
        refresh_token = Secret(values["refresh_token"])
        try:
            access_token = await self._oauth.access_token(
                token_url,
                values["client_id"],
                Secret(values["client_secret"]),
                refresh_token,
                scope=MICROSOFT_ADS_SCOPE if kind == "microsoft_ads" else None,
            )
        except OAuthError as exc:
            raise CredentialsUnavailable(exc.to_outcome()) from None
        key = OAuthTokenCache.key_for(token_url, values["client_id"], refresh_token)
        return RequestCredentials(access_token, values["developer_token"], key)

    def invalidate(self, credentials: RequestCredentials) -> None:
        """The platform refused the access token: the next resolve() fetches a new one."""
        if credentials.token_key is not None:
            self._oauth.invalidate(credentials.token_key, credentials.access_token)


def _missing(detail: str) -> Outcome:
    return Outcome(Verdict.REJECTED, "missing_credentials", detail[:300])
