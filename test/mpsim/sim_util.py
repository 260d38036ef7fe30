"""Helpers shared by the Mercado Pago simulator modules.

Time (with a test-controlled offset), ISO-8601 formats as Mercado Pago prints
them, ULID-like ids, exact decimal amounts, error bodies in the two envelopes
MP uses (classic APIs and the Orders API), and site/currency facts.
Nothing here holds state except the clock offset.
"""

import datetime
import json
import re
import secrets
import time
from decimal import Decimal, InvalidOperation

# --------------------------------------------------------------------- clock

_clock = {"offset": 0.0}


def now():
    """Return the simulated time (epoch seconds): real time plus an offset."""
    return time.time() + _clock["offset"]


def advance_clock(seconds):
    _clock["offset"] += float(seconds)
    return _clock["offset"]


def reset_clock():
    _clock["offset"] = 0.0


MP_TZ = datetime.timezone(datetime.timedelta(hours=-4))


def iso_mp(ts=None, style="offset"):
    """Format a time as MP's classic APIs do (API reference §12.12).

    offset     2024-02-09T12:47:05.000-04:00 (the usual form)
    z          2024-02-09T16:47:05.000Z
    micro      2024-02-09T12:47:05.123456-04:00
    malformed  2024-02-09T12:47:0504:00 (seen in notification-additional-info)
    """
    ts = now() if ts is None else ts
    dt = datetime.datetime.fromtimestamp(ts, MP_TZ)
    if style == "z":
        return iso_z(ts)
    if style == "micro":
        return dt.isoformat(timespec="microseconds")
    if style == "malformed":
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + "04:00"
    return dt.isoformat(timespec="milliseconds")


DATE_STYLES = ("offset", "z", "micro", "malformed")


def iso_z(ts=None, nanos=False):
    """Format like the Orders API: 2025-07-18T12:06:17.660Z (or nanoseconds)."""
    ts = now() if ts is None else ts
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    frac = "%06d" % dt.microsecond
    frac = frac + "000" if nanos else frac[:3]
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"


def parse_iso_offset(text):
    """Parse an ISO-8601 timestamp that carries an offset; return epoch or None."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


_NOW_EXPR = re.compile(r"^NOW(?:([+-])(\d+)(SECONDS?|MINUTES?|HOURS?|DAYS?|WEEKS?|MONTHS?|YEARS?))?$")
_UNIT = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400, "WEEK": 7 * 86400,
         "MONTH": 30 * 86400, "YEAR": 365 * 86400}


def parse_search_time(text):
    """A payments-search begin_date/end_date: ISO-8601 with offset (or Z), or
    a NOW-3HOURS-style expression (§12.13); return epoch seconds or None."""
    if not isinstance(text, str):
        return None
    m = _NOW_EXPR.match(text.strip().upper())
    if m:
        sign, n, unit = m.groups()
        if not sign:
            return now()
        secs = int(n) * _UNIT[unit.rstrip("S")]
        return now() + (secs if sign == "+" else -secs)
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    return parse_iso_offset(t)


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text):
    """Parse an ISO-8601 duration such as PT15M; return seconds or None."""
    if not isinstance(text, str):
        return None
    m = _DURATION.match(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        return None
    d, h, mi, s = m.groups()
    return (int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60
            + float(s or 0))


# ----------------------------------------------------------------------- ids

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(ts=None):
    """Return a 26-character Crockford base32 ULID."""
    ms = int((time.time() if ts is None else ts) * 1000)
    v = (ms << 80) | secrets.randbits(80)
    return "".join(_B32[(v >> (5 * i)) & 31] for i in reversed(range(26)))


# ------------------------------------------------------------------ amounts


def is_number(x):
    return isinstance(x, (int, Decimal)) and not isinstance(x, bool)


def D(x):
    """Decimal from an int, Decimal, float or numeric string."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, float):
        return Decimal(repr(x))
    return Decimal(x)


def decimals(d):
    """Number of significant decimal places of a Decimal (20.50 -> 1)."""
    d = D(d)
    if d == 0:
        return 0
    return max(0, -d.normalize().as_tuple().exponent)


def out_amount(d):
    """Amount as a JSON number: int when integral, else float."""
    d = D(d)
    if d == d.to_integral_value():
        return int(d)
    return float(d)


def amount_str(d, integer_currency=False):
    """Orders API amount string: "50.00" (or "1500" for CLP/COP)."""
    d = D(d)
    if integer_currency:
        return str(int(d))
    return str(d.quantize(Decimal("0.01")))


_AMOUNT_STR = re.compile(r"^\d+(\.\d{2})?$")


def parse_amount_str(text):
    """Parse an Orders API amount string ("two decimals or none")."""
    if not isinstance(text, str) or not _AMOUNT_STR.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


# --------------------------------------------------------------------- json


def _default(o):
    if isinstance(o, Decimal):
        return out_amount(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError("not JSON serializable: %r" % (o,))


def dumps(obj):
    return json.dumps(obj, default=_default, separators=(",", ":"), ensure_ascii=False)


def loads(text):
    """Parse JSON keeping decimal numbers exact."""
    return json.loads(text, parse_float=Decimal)


def public(obj):
    """Deep copy without internal keys (those starting with "_")."""
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [public(v) for v in obj]
    return obj


# ------------------------------------------------------------------- errors


class ApiError(Exception):
    """An HTTP error answer: status, JSON body, extra headers."""

    def __init__(self, status, body, headers=None):
        super().__init__("%s %s" % (status, body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def classic(status, error, message, cause=None):
    """Classic API error body: message, error, status, cause."""
    return ApiError(status, {"message": message, "error": error,
                             "status": status, "cause": cause or []})


def cause_error(status, error, message, code, description=None):
    """Classic error whose cause carries a numeric code (Payments API)."""
    return classic(status, error, message,
                   [{"code": code, "description": description or message,
                     "data": iso_mp()}])


def forbidden_payment():
    """403 code 4: another collector's payment (API reference §12.1)."""
    return cause_error(403, "forbidden", "The caller is not authorized to access this resource",
                       4)


def orders_err(status, code, message, details=None):
    """Orders API error body: {"errors":[{code,message,details}]}."""
    return ApiError(status, {"errors": [{"code": code, "message": message,
                                         "details": details or []}]})


# -------------------------------------------------------------------- sites

SITES = {
    "MLA": {"currency": "ARS", "country3": "ARG", "country2": "AR", "integer": False,
            "num": "032", "country_name": "Argentina", "mcc": (621102, 473000)},
    "MLB": {"currency": "BRL", "country3": "BRA", "country2": "BR", "integer": False,
            "num": "986", "country_name": "Brasil", "mcc": (5611203, 4731300)},
    "MLM": {"currency": "MXN", "country3": "MEX", "country2": "MX", "integer": False,
            "num": "484", "country_name": "Mexico", "mcc": (5812, 468419)},
    "MLC": {"currency": "CLP", "country3": "CHL", "country2": "CL", "integer": True,
            "num": "152", "country_name": "Chile", "mcc": (561000, 473001)},
    "MLU": {"currency": "UYU", "country3": "URY", "country2": "UY", "integer": False,
            "num": "858", "country_name": "Uruguay", "mcc": (56101, 47300)},
    "MCO": {"currency": "COP", "country3": "COL", "country2": "CO", "integer": True,
            "num": "170", "country_name": "Colombia", "mcc": (5611, 4731)},
    "MPE": {"currency": "PEN", "country3": "PER", "country2": "PE", "integer": False,
            "num": "604", "country_name": "Peru", "mcc": (5520, 5050)},
}


def integer_message(currency):
    return "Prices in %s currency must be expressed with integer values" % currency


def crc16_ccitt(data):
    crc = 0xFFFF
    for b in data.encode("utf-8"):
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return "%04X" % crc


def emv_static_qr(pos_id, name, site):
    """Build an EMVCo static QR payload (point of initiation 11, no amount)."""
    def tlv(tag, value):
        return "%s%02d%s" % (tag, len(value), value)
    mai = tlv("00", "COM.MERCADOLIBRE") + tlv("01", "mpago.la/pos/%s" % pos_id)
    payload = (tlv("00", "01") + tlv("01", "11") + tlv("43", mai) + tlv("52", "0000")
               + tlv("53", site["num"]) + tlv("58", site["country2"])
               + tlv("59", (name or "MERCHANT")[:25]) + tlv("60", "CIUDAD") + "6304")
    return payload + crc16_ccitt(payload)


def _tlv(tag, value):
    return "%s%02d%s" % (tag, len(value), value)


def emv_dynamic_qr(order_id, name, site, amount):
    """EMVCo payload of a dynamic QR (Orders API type_response.qr_data, §12.11):
    point of initiation 12 (dynamic), the amount (tag 54) and the order as the
    reference label (tag 62, sub-tag 05), closed by its CRC (tag 63)."""
    mai = _tlv("00", "COM.MERCADOLIBRE") + _tlv("01", "mpago.la/o/%s" % order_id[-25:])
    payload = (_tlv("00", "01") + _tlv("01", "12") + _tlv("43", mai) + _tlv("52", "0000")
               + _tlv("53", site["num"]) + _tlv("54", str(amount)) + _tlv("58", site["country2"])
               + _tlv("59", (name or "MERCHANT")[:25]) + _tlv("60", "CIUDAD")
               + _tlv("62", _tlv("05", order_id[-25:])) + "6304")
    return payload + crc16_ccitt(payload)
