"""Pagination styles: how the page after an answer is asked for. A provider selects one in its
`RemoteAPI` declaration (flowforged/plugin.py) and `ProviderClient.pages()` follows it; a call may
pass another for an endpoint that pages differently.

Each style is pure: given an answer, the request that asked for it and its query parameters, it says
what to ask for next, or None after the last page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from flowforged.ratelimits import header_map, integer

if TYPE_CHECKING:
    from flowforged.http import Response

Next = tuple[str, dict[str, Any] | None]  # a path or absolute URL, and the query parameters to send with it


class Pagination(Protocol):
    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        """What to ask for after `response` (which answered `path_or_url` with `params`); None: it was the last."""
        ...


class Single:
    """An endpoint that answers everything at once (Jenkins' `tree=` ranges are the caller's own)."""

    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        return None


class LinkHeader:
    """RFC 8288 `Link: <url>; rel="next"` (GitHub, GitLab's keyset pages, Buildkite)."""

    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        url = response.links.get("next")
        return (url, None) if url else None


class NextPageHeader:
    """A header that gives the next page's number, empty on the last page (GitLab's `x-next-page`):
    the same request again with `param` set to it."""

    def __init__(self, header: str = "x-next-page", param: str = "page") -> None:
        self.header = header
        self.param = param

    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        page = integer(header_map(response.headers).get(self.header))
        return (path_or_url, {**(params or {}), self.param: page}) if page is not None else None


class NextInBody:
    """An absolute URL of the next page in the body, absent on the last page (a `next` field, as
    Django REST framework and many REST APIs write it): it carries every query parameter itself."""

    def __init__(self, field: Sequence[str] | str = "next") -> None:
        self.path = (field,) if isinstance(field, str) else tuple(field)

    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        url = dig(response.data, self.path)
        return (url, None) if isinstance(url, str) and url else None


class ContinueToken:
    """A token in the body to send back as a query parameter (Kubernetes list calls: `limit`, and
    `metadata.continue` answered until the last chunk,
    https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks)."""

    def __init__(self, field: Sequence[str] = ("metadata", "continue"), param: str = "continue") -> None:
        self.path = tuple(field)
        self.param = param

    def following(self, response: Response, path_or_url: str, params: Mapping[str, Any] | None) -> Next | None:
        token = dig(response.data, self.path)
        return (path_or_url, {**(params or {}), self.param: token}) if isinstance(token, str) and token else None


def dig(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,"\s=]+(?:\s*=\s*(?:"[^"]*"|[^;,\s]*))?)*)')
_PARAM = re.compile(r';\s*([^;,"\s=]+)(?:\s*=\s*(?:"([^"]*)"|([^;,\s]*)))?')


def parse_link(value: str | None) -> dict[str, str]:
    """An RFC 8288 `Link` header as {rel: url}."""
    links: dict[str, str] = {}
    for match in _LINK.finditer(value or ""):
        for name, quoted, bare in _PARAM.findall(match.group(2)):
            if name.lower() == "rel":
                for rel in (quoted or bare).split():  # rel="next last" names two relations
                    links.setdefault(rel.lower(), match.group(1))
    return links
