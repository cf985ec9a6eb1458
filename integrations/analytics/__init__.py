"""Product analytics (PostHog, batched off the request path) and error reporting (Sentry,
scrubbed), plus a PostHog stand-in for tests."""

from integrations.analytics.posthog import PostHogClient, PostHogSettings, PostHogStats
from integrations.analytics.sentry import init_sentry, scrub_event

__all__ = ["PostHogClient", "PostHogSettings", "PostHogStats", "init_sentry", "scrub_event"]
