"""Entities: what features are keyed by."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item.")
item_category = Entity(
    name="item_category", join_keys=["item_category"], value_type=ValueType.STRING, description="An item category."
)

BY_JOIN_KEY = {"user_id": user, "item_id": item, "item_category": item_category}
