"""Model-card metadata: the YAML front matter, parsed without alias expansion and with bounded size and depth."""

from __future__ import annotations

from typing import Any


def _card_body(content: str) -> str:
    """The card's Markdown without its YAML front matter."""
    lines = content.lstrip("\ufeff").splitlines()
    if lines and lines[0].strip() == "---":
        for index in range(1, len(lines)):
            if lines[index].strip() == "---":
                return "\n".join(lines[index + 1 :])
    return content


def _split_front_matter(content: str) -> str | None:
    """The YAML block between the leading `---` lines of a model card, or None when there is none."""
    lines = content.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "\n".join(lines[1:index])
    return None


MAX_CARD_METADATA = 64 * 1024  # bytes of a model card's YAML block that are parsed


MAX_CARD_JSON = 256 * 1024  # bytes of `cardData` (as JSON) served in repo info; larger metadata is left out


MAX_CARD_DEPTH = 50  # nesting levels of the card's YAML


def _yaml_loader() -> Any:
    """A `yaml.SafeLoader` subclass that refuses aliases (`*name`) and deep nesting, or None without PyYAML.

    Aliases are what makes a few hundred bytes of YAML expand into gigabytes ("billion laughs"); model cards have
    no use for them, so they are an error, like invalid YAML.
    """
    try:
        import yaml
    except ImportError:  # PyYAML missing: accept the card rather than refuse what we cannot check
        return None

    class NoAliasLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"YAML aliases (*{event.anchor}) are not allowed in model card metadata",
                    event.start_mark,
                )
            self._depth += 1
            try:
                if self._depth > MAX_CARD_DEPTH:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"metadata is nested deeper than {MAX_CARD_DEPTH} levels",
                        self.peek_event().start_mark,
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return NoAliasLoader


def _parse_card_metadata(content: str) -> tuple[dict | None, str | None]:
    """Parse a model card's YAML metadata. Returns `(metadata, error)`; both None when the card has none."""
    block = _split_front_matter(content)
    if block is None:
        return None, None
    loader = _yaml_loader()
    if loader is None:
        return None, None
    import yaml

    if len(block.encode()) > MAX_CARD_METADATA:
        return None, f"Model card metadata is larger than {MAX_CARD_METADATA} bytes."
    try:
        data = yaml.load(block, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in the model card metadata: {exc}"
    except (RecursionError, ValueError, OverflowError) as exc:
        return None, f"Invalid YAML in the model card metadata: {type(exc).__name__}: {exc}"
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, f"Model card metadata must be a YAML mapping, got {type(data).__name__}."
    return data, None


def _card_tags(card: dict) -> dict:
    """`tags` (and `library_name`, `pipeline_tag`) of repo info, from the card's metadata, as the Hub lists them."""
    tags = card.get("tags")
    result: dict[str, Any] = {"tags": [str(tag) for tag in tags][:100] if isinstance(tags, list) else []}
    for key in ("library_name", "pipeline_tag"):
        if isinstance(card.get(key), str):
            result[key] = card[key]
            result["tags"].append(card[key])
    return result
