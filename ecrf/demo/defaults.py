"""What every demo shares: its default seed, the start of its calendar, its accounts.

Kept apart from the simulation so that the command line can show them without loading
the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ecrf.domain.access import Actor

DEFAULT_SEED = 48
DEMO_PASSWORD = "ecrf-demo-password"
STUDY_START = date(2022, 3, 1)
SITE = "CHH"


@dataclass(frozen=True)
class DemoAccount:
    """An account the demo creates, and what its holder does in the trial."""

    username: str
    full_name: str
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    does: str

    @property
    def actor(self) -> Actor:
        """The account as the acting identity of commands."""
        return Actor(self.username, self.full_name, self.roles, self.sites, "demo")


DEMO_ACCOUNTS = (
    DemoAccount("admin", "Demo Administrator", ("admin",), (), "creates the accounts"),
    DemoAccount(
        "crc",
        "Chen Jing (study coordinator)",
        ("site_staff",),
        (SITE,),
        "registers subjects, enters and corrects data, answers queries",
    ),
    DemoAccount(
        "pi",
        "Dr Wang Lei (principal investigator)",
        ("investigator",),
        (SITE,),
        "confirms eligibility, adjudicates DLTs, signs",
    ),
    DemoAccount(
        "monitor",
        "Anna Keller (clinical research associate)",
        ("monitor",),
        (SITE,),
        "verifies source data, raises and closes queries",
    ),
    DemoAccount(
        "datamanager",
        "Liu Yang (data manager)",
        ("data_manager",),
        (),
        "reviews data and raises queries",
    ),
    DemoAccount(
        "safety",
        "Prof. Maria Rossi (Safety Review Committee chair)",
        ("safety_reviewer",),
        (),
        "records the signed dose-escalation decisions",
    ),
    DemoAccount(
        "regulator",
        "Tom Baker (inspector)",
        ("regulator",),
        (),
        "reads the ledger and audit trails (nothing to do in the simulation)",
    ),
)
