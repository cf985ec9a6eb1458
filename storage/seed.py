"""A realistic demo catalogue: Mauritian produce at Rs prices, some buyers and orders."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import func, select

from storage.changelog import ChangeLog
from storage.listings import create_listing
from storage.models import Listing

PRODUCE: list[tuple[str, str, int, str, str]] = [
    # title, unit, price (Rs), category, description
    ("Pomme d'amour", "kg", 60, "vegetables", "Tomates de Plaine Magnien, cueillies ce matin."),
    ("Brède songe", "bunch", 25, "greens", "Brèdes fraîches pour un bouillon."),
    ("Brède cresson", "bunch", 20, "greens", "Cresson de Mare d'Albert."),
    ("Brède malbar", "bunch", 20, "greens", "Feuilles tendres, parfaites en fricassée."),
    ("Giraumon", "kg", 35, "vegetables", "Potiron local, chair bien orange."),
    ("Chouchou", "kg", 40, "vegetables", "Chayotes de Plaine des Papayes."),
    ("Lalo", "kg", 90, "vegetables", "Okra, jeunes et croquants."),
    ("Bringelle", "kg", 55, "vegetables", "Aubergines longues."),
    ("Pipengaille", "kg", 50, "vegetables", "Pipengailles pour le bouillon."),
    ("Calebasse", "piece", 45, "vegetables", "Calebasse moyenne, environ 1 kg."),
    ("Margoz", "kg", 80, "vegetables", "Margoze amère, idéale en rougaille."),
    ("Patole", "kg", 45, "vegetables", "Patoles fraîches."),
    ("Carotte", "kg", 65, "vegetables", "Carottes de Vacoas."),
    ("Chou", "piece", 50, "vegetables", "Chou pommé, 1 à 1,5 kg."),
    ("Pomme de terre", "kg", 48, "vegetables", "Pommes de terre locales."),
    ("Oignon", "kg", 70, "vegetables", "Oignons rouges."),
    ("Piment", "pack", 15, "spices", "Barquette de piments verts."),
    ("Gingembre", "kg", 180, "spices", "Gingembre frais."),
    ("Thym", "bunch", 15, "herbs", "Thym de Curepipe."),
    ("Cotomili", "bunch", 10, "herbs", "Coriandre fraîche."),
    ("Ti oignon", "bunch", 20, "herbs", "Cives fraîches."),
    ("Fraise", "tray", 150, "fruits", "Fraises de Vacoas, barquette de 250 g."),
    ("Letchi", "kg", 120, "fruits", "Letchis de saison, sucrés."),
    ("Mangue José", "dozen", 300, "fruits", "Mangues José bien mûres."),
    ("Ananas Victoria", "piece", 60, "fruits", "Ananas Victoria, petit et très sucré."),
    ("Banane", "dozen", 75, "fruits", "Bananes de Rivière du Rempart."),
    ("Papaye", "piece", 55, "fruits", "Papaye solo, environ 800 g."),
    ("Goyave de Chine", "kg", 100, "fruits", "Goyaves de Chine du plateau."),
    ("Citron", "kg", 90, "fruits", "Citrons verts."),
    ("Fruit à pain", "piece", 40, "fruits", "Fruit à pain du jardin."),
    ("Manioc", "kg", 45, "roots", "Manioc frais, à cuire en bouillon."),
    ("Patate douce", "kg", 50, "roots", "Patates douces violettes."),
    ("Songe", "kg", 85, "roots", "Arouilles (songe) de Chamarel."),
    ("Oeufs frais", "dozen", 95, "eggs", "Oeufs de poules élevées en plein air."),
    ("Miel de letchi", "piece", 450, "honey", "Pot de 500 g, miel de letchi."),
    ("Lait de coco", "litre", 120, "dairy", "Lait de coco frais, pressé du jour."),
    ("Fromage de chèvre", "piece", 275, "dairy", "Fromage frais de 200 g."),
    ("Haricot vert", "kg", 95, "vegetables", "Haricots verts fins."),
    ("Concombre", "kg", 40, "vegetables", "Concombres croquants."),
    ("Laitue", "piece", 30, "greens", "Laitue batavia."),
]


@dataclass
class SeedReport:
    listings_created: int
    listings_total: int


async def seed_listings(changelog: ChangeLog, count: int, *, rng_seed: int = 7) -> SeedReport:
    """Create demo listings (once: a second run adds only what is missing)."""
    async with changelog.db.read() as conn:
        existing = int(
            (
                await conn.execute(
                    select(func.count()).select_from(Listing).where(Listing.source == "demo")
                )
            ).scalar_one()
        )
    rng = random.Random(rng_seed)
    created = 0
    for index in range(existing, count):
        title, unit, rupees, category, description = PRODUCE[index % len(PRODUCE)]
        batch = index // len(PRODUCE)
        name = title if batch == 0 else f"{title} ({_farms[batch % len(_farms)]})"
        values = {
            "title": name,
            "description": description,
            "price": (rupees + rng.choice((0, 0, 5, 10, -5)) * (batch > 0)) * 100,
            "unit": unit,
            "stock": rng.choice((0, 5, 12, 20, 40, 80, 150)),
            "category": category,
            "images": [f"freshroots/demo/{category}-{index % 7 + 1}"],
            "status": "published" if rng.random() > 0.08 else "draft",
        }
        async with changelog.transaction() as tx:
            await create_listing(tx, None, values, source="demo", source_ref=f"demo:{index}")
        created += 1
    return SeedReport(created, max(existing, count))


_farms = [
    "Vacoas",
    "Quatre Bornes",
    "Flacq",
    "Rose Belle",
    "Grand Baie",
    "Mahébourg",
    "Triolet",
    "Moka",
    "Souillac",
    "Curepipe",
]
