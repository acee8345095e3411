"""The auto-response templates of a queue (queue.auto_response_*): filled in by the
auto-response stage, checked by the configuration's validation."""

from __future__ import annotations


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, values: dict[str, str]) -> str:
    """{ticket_number} {title} {customer}; unknown placeholders stay as written.
    Raises TemplateError for a template that cannot be filled in."""
    try:
        return template.format_map(_Missing(values))
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise TemplateError(str(exc)) from None


class TemplateError(ValueError):
    """An auto-response template that cannot be filled in ({ticket_number without its
    closing brace, a lone }, {0})."""


def template_error(template: str) -> str:
    """Why `template` cannot be filled in ('' = it can): for `deskgate check`."""
    try:
        render(template, {"ticket_number": "1", "title": "", "customer": ""})
    except TemplateError as exc:
        return str(exc)
    return ""
