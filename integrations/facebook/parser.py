"""Turn a farm's Facebook post into draft listings: `{title, price (cents), unit}`.

Mauritian farms post in French, English and Kreol, several products to a post, with phone
numbers, delivery fees and greetings mixed in. The parser works on *offers*: it finds every
price, cuts the post into clauses (lines, sentences, commas, bullets, brackets), and for each
clause with a price takes the words before it as the product and the words around it as the
unit. Clauses about delivery or minimum orders are not products; a price clause with no
product words of its own ("… (sac 10kg Rs 500)", "… - Rs 350") takes the product of the
clause before it. Rules, not examples: nothing here names a product.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import orjson

from storage.drafts import Draft, PostDrafts

UNITS: dict[str, str] = {
    # kg
    "kg": "kg",
    "kgs": "kg",
    "kilo": "kg",
    "kilos": "kg",
    "kilogramme": "kg",
    "kilogram": "kg",
    # g, lb
    "g": "g",
    "gr": "g",
    "gramme": "g",
    "grammes": "g",
    "grams": "g",
    "lb": "lb",
    "lbs": "lb",
    "livre": "lb",
    "livres": "lb",
    "pound": "lb",
    # piece
    "piece": "piece",
    "pièce": "piece",
    "pieces": "piece",
    "pièces": "piece",
    "pce": "piece",
    "pcs": "piece",
    "each": "piece",
    "chaque": "piece",
    "unité": "piece",
    "unite": "piece",
    "unit": "piece",
    "l'unité": "piece",
    "ea": "piece",
    # bunch
    "botte": "bunch",
    "bottes": "bunch",
    "bunch": "bunch",
    "bouquet": "bunch",
    "main": "bunch",
    "paké": "bunch",
    # dozen
    "douzaine": "dozen",
    "dozen": "dozen",
    "dz": "dozen",
    "douz": "dozen",
    # pack
    "paquet": "pack",
    "paquets": "pack",
    "pack": "pack",
    "packet": "pack",
    "sachet": "pack",
    "pqt": "pack",
    # litre
    "litre": "litre",
    "litres": "litre",
    "liter": "litre",
    "l": "litre",
    "lit": "litre",
    # bag
    "sac": "bag",
    "sacs": "bag",
    "bag": "bag",
    "sack": "bag",
    "gony": "bag",
    # tray
    "barquette": "tray",
    "barquettes": "tray",
    "tray": "tray",
    "plateau": "tray",
    "punnet": "tray",
}
CONTAINERS = {
    "sac": "bag",
    "sacs": "bag",
    "bag": "bag",
    "sack": "bag",
    "barquette": "tray",
    "tray": "tray",
    "plateau": "tray",
    "paquet": "pack",
    "sachet": "pack",
    "pack": "pack",
    "botte": "bunch",
    "douzaine": "dozen",
}
NOT_PRODUCTS = re.compile(
    r"\b(livraison|livré|livrer|delivery|deliver|frais de (?:livraison|port|transport)|"
    r"fee|fees|gratuit|gratuite|free|"
    r"au-dessus|au dessus|above|over|minimum|min\.|commande min|shipping|transport|"
    r"total|dès|a partir|à partir)\b",
    re.IGNORECASE,
)
PRICE = re.compile(
    r"(?:(?<![\w])(?:rs\.?|mur|roupies?|₨)\s*"
    r"(?P<a>\d{1,3}(?:[ ,.]\d{3})+|\d+)(?:[.,](?P<ac>\d{1,2}))?)"
    r"|(?:(?P<b>\d{1,3}(?:[ ,]\d{3})+|\d+)(?:[.,](?P<bc>\d{1,2}))?\s*(?:rs|roupies?|mur)\b)",
    re.IGNORECASE,
)
PHONE = re.compile(
    r"(?:(?:t[ée]l|tel|phone|whatsapp|wa|call|appelez|appel|contact)\s*[:.]?\s*)?"
    r"(?:\+?230[\s-]?)?(?<!\d)(?:\d[\s-]?){7,8}(?!\d)",
    re.IGNORECASE,
)
SIZE = re.compile(r"\b\d+(?:[.,]\d+)?\s?(?:kg|g|gr|ml|cl|l|lb|litres?|grammes?)\b", re.IGNORECASE)
LEAD_LABEL = re.compile(r"^[^:]{0,25}:\s*")
PROMO_WORDS = re.compile(
    r"^(?:promo|promotion|nouveau|new|arrivage|disponible|available|special|spécial|"
    r"aujourd'hui|today|stock)\b[!:.\s-]*",
    re.IGNORECASE,
)
CONNECTORS = re.compile(r"^(?:le|la|les|l'|per|par|a|an|the|un|une|en)\s+", re.IGNORECASE)
# Sentence ends, but not the dot of "Rs." before a price.
CLAUSE_BREAK = re.compile(r"\n+|(?<![Rr][Ss])[.!?](?:\s+|$)|,(?!\d)|;|•|·|\(|\)|\s[-–—]\s|\|")
# "3 pou Rs 100", "2 for Rs 50": a bundle price, sold as a pack.
BUNDLE = re.compile(r"\b\d+\s*(?:pou|pour|for|x)\s*$", re.IGNORECASE)
FILLER = {"ou", "or", "et", "and", "ek", "avec", "with", "seulement", "only", "prix", "price"}


def _cents(match: re.Match[str]) -> int:
    whole = match.group("a") or match.group("b") or "0"
    cents = match.group("ac") or match.group("bc")
    digits = re.sub(r"[ ,.]", "", whole)
    value = int(digits) * 100
    if cents:
        value += int(cents.ljust(2, "0"))
    return value


def _strip_symbols(text: str) -> str:
    """Drop emoji and pictographs; keep letters (accented too), digits and punctuation."""
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category.startswith(("L", "N", "Z")) or char in "'’-&/.,:%":
            kept.append(char)
        else:
            kept.append(" ")
    return re.sub(r"\s+", " ", "".join(kept)).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’]+", text.lower())


def _unit_near(after: str, before: str, title: str) -> str:
    """The unit: words right after the price ("le kilo", "/kg", "each"), else a container
    named just before it ("sac 10kg Rs 500"), else a sized item ("1L", "500ml") is a piece."""
    after = after.strip().lower()
    slash = re.match(r"^/\s*([a-zé']+)", after)
    if slash and slash.group(1) in UNITS:
        return UNITS[slash.group(1)]
    for word in _words(after)[:3]:
        if word in UNITS:
            return UNITS[word]
        if word.startswith("l'") and word[2:] in UNITS:
            return UNITS[word[2:]]
    for word in reversed(_words(before)):
        if word in CONTAINERS:
            return CONTAINERS[word]
    return "piece"


def _clean_title(text: str) -> str:
    text = _strip_symbols(text)
    text = SIZE.sub(" ", text)
    text = LEAD_LABEL.sub("", text) if ":" in text[:26] else text
    text = PROMO_WORDS.sub("", text.strip())
    text = re.sub(r"[\s:/\-–—,.]+$", "", text).strip()
    text = re.sub(r"^[\s:/\-–—,.]+", "", text)
    words = [w for w in text.split() if w.lower() not in CONTAINERS]
    text = " ".join(words)
    text = CONNECTORS.sub("", text)
    return text[:1].upper() + text[1:] if text else ""


def _is_product_title(title: str) -> bool:
    """Product words left once unit words and fillers ("chaque ou", "et") are set aside."""
    words = [w for w in _words(title) if w not in UNITS and w not in FILLER]
    letters = re.sub(r"[^a-zàâäéèêëîïôöùûüç]", "", "".join(words))
    return len(letters) >= 3


def parse_message(message: str) -> list[Draft]:
    text = PHONE.sub(" ", message or "")
    # An aside without figures ("(cacahuète)", "(bio)") is commentary, not a clause of its own.
    text = re.sub(r"\(([^()\d]*)\)", " ", text)
    drafts: list[Draft] = []
    last_title = ""
    position = 0
    clauses: list[str] = []
    for boundary in CLAUSE_BREAK.finditer(text):
        clauses.append(text[position : boundary.start()])
        position = boundary.end()
    clauses.append(text[position:])
    previous_plain = ""
    for clause in clauses:
        prices = list(PRICE.finditer(clause))
        if not prices:
            if clause.strip():
                previous_plain = clause
            continue
        if NOT_PRODUCTS.search(clause):
            previous_plain = ""
            continue
        start = 0
        for index, match in enumerate(prices):
            end = prices[index + 1].start() if index + 1 < len(prices) else len(clause)
            before, after = clause[start : match.start()], clause[match.end() : end]
            bundle = BUNDLE.search(before)
            if bundle:
                before = before[: bundle.start()]
            title = _clean_title(before)
            if not _is_product_title(title):
                title = last_title or _clean_title(previous_plain)
            if not _is_product_title(title):
                start = match.end()
                continue
            price = _cents(match)
            if price <= 0:
                continue
            unit = "pack" if bundle else _unit_near(after, before, title)
            drafts.append(Draft(title=title, price=price, unit=unit))
            last_title = title
            start = match.end()
        previous_plain = ""
    return drafts


def _created_ms(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_feed_page(page: dict[str, Any]) -> list[PostDrafts]:
    posts = []
    for post in page.get("data", []) or []:
        if not isinstance(post, dict) or "id" not in post:
            continue
        message = str(post.get("message") or "")
        posts.append(
            PostDrafts(
                post_id=str(post["id"]),
                message=message,
                created_time=_created_ms(post.get("created_time")),
                picture=post.get("full_picture"),
                permalink=post.get("permalink_url"),
                drafts=parse_message(message),
            )
        )
    return posts


def feed_page_to_json_lines(page: dict[str, Any]) -> Iterator[str]:
    """What `freshroots facebook parse FEED.json` prints: one JSON object per post."""
    for post in parse_feed_page(page):
        yield orjson.dumps(
            {"post_id": post.post_id, "listings": [asdict(draft) for draft in post.drafts]}
        ).decode()
