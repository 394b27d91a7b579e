"""Per-organisation feature flags (``Organization.feature_flags``), read strictly."""

from runs.models import Organization

MOLLIFIER_ENABLED = "mollifierEnabled"


def flag_enabled(*, organization: Organization, name: str) -> bool:
    """Only JSON ``true`` enables: ``"false"``, ``1`` or ``"yes"`` do not (the original's coerced
    boolean read the string "false" as true)."""
    flags = organization.feature_flags
    return isinstance(flags, dict) and flags.get(name) is True


def mollifier_enrolled(organization: Organization) -> bool:
    return flag_enabled(organization=organization, name=MOLLIFIER_ENABLED)


def organization_set_flag(*, organization: Organization, name: str, enabled: bool) -> None:
    """Set one flag, keeping the others; effective on the organisation's next trigger."""
    flags = dict(organization.feature_flags) if isinstance(organization.feature_flags, dict) else {}
    flags[name] = enabled
    organization.feature_flags = flags
    organization.save(update_fields=["feature_flags"])
