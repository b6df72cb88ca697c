"""The protobuf wire format, read and written by hand where protobuf's own API would copy: varints, the fields
of an encoded message, and one field of a message encoded on its own. Loading walks a model's bytes with these;
saving streams a model with them.
"""

from __future__ import annotations

from typing import Iterator, Tuple

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError


def varint(data, position: int) -> Tuple[int, int]:
    """The varint at data[position] and the position after it."""
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def varint_bytes(value: int) -> bytes:
    """`value` encoded as a varint."""
    encoded = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            encoded.append(low)
            return bytes(encoded)
        encoded.append(low | 0x80)


def fields(data, start: int, end: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """(number, wire type, start, payload start, end) of each protobuf field encoded in data[start:end]."""
    position = start
    while position < end:
        field_start = position
        key, position = varint(data, position)
        wire_type = key & 7
        payload = position
        if wire_type == 0:
            _, position = varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 2:
            length, payload = varint(data, position)
            position = payload + length
        elif wire_type == 5:
            position += 4
        else:
            raise DecodeError(f"wire type {wire_type}")
        if position > end:
            raise DecodeError("field runs past the end of its message")
        yield key >> 3, wire_type, field_start, payload, position


def is_repeated(field) -> bool:
    # protobuf 5.26+ has is_repeated; `label` is gone from newer releases.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def set_field(message, field, value) -> None:
    """Give `message` the value of one field (from another message's ListFields()): extend, copy or assign."""
    if is_repeated(field):
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def single_field(container, field, value) -> bytes:
    """One field of a message, encoded as the message would encode it."""
    set_field(container, field, value)
    return container.SerializeToString()
