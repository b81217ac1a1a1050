"""Stand-in for the zerver.models package (only what the forwarder imports)."""

from zerver.models.users import UserProfile, get_user_profile_by_id

__all__ = ["UserProfile", "get_user_profile_by_id"]
