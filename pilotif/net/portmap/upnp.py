"""UPnP IGD, sans-IO: SSDP discovery of an Internet Gateway Device (an HTTP-over-UDP
M-SEARCH to 239.255.255.250:1900 and the LOCATION of its answer), the WAN connection
service's control URL in the device description, and the SOAP calls a node needs
(GetExternalIPAddress, AddPortMapping, DeletePortMapping) with their answers. The HTTP
exchanges themselves are the shell's (`pilotif.net.portmap.client`).

The gateway's documents are the LAN's word: size-capped, parsed with a DOCTYPE refused
(no entities, so no expansion), and anything that does not parse is a PortMapError.
"""

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

from pilotif.net.portmap.errors import PortMapError

SSDP_ADDRESS: Final = "239.255.255.250"
SSDP_PORT: Final = 1900
SEARCH_TARGET: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
SSDP_WAIT_S: Final = 1
"""MX: how long gateways may wait before answering a search."""
WAN_SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
"""The services that map ports, in order of preference."""
MAX_DOCUMENT_BYTES: Final = 64 * 1024
"""The largest description or SOAP answer read from a gateway."""
_SOAP_ENVELOPE: Final = (
    '<?xml version="1.0"?>\r\n'
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
    '<s:Body><u:{action} xmlns:u="{service}">{arguments}</u:{action}></s:Body></s:Envelope>'
)
_DEVICE_NS: Final = "{urn:schemas-upnp-org:device-1-0}"


@dataclass(frozen=True)
class Gateway:
    """An IGD's WAN connection service, as its description names it."""

    control_url: str
    service: str


@dataclass(frozen=True)
class SoapCall:
    """One SOAP request: POST `body` to the control URL with these headers."""

    action: str
    headers: dict[str, str]
    body: bytes


def search_request() -> bytes:
    """The SSDP M-SEARCH for Internet Gateway Devices."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDRESS}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {SSDP_WAIT_S}\r\n"
        f"ST: {SEARCH_TARGET}\r\n"
        "\r\n"
    ).encode()


def parse_search_answer(data: bytes) -> str:
    """The description URL (LOCATION) of a gateway's answer to `search_request`."""
    try:
        text = data[:MAX_DOCUMENT_BYTES].decode("ascii")
    except UnicodeDecodeError:
        raise PortMapError("malformed", "an SSDP answer that is not ASCII") from None
    lines = text.split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise PortMapError("unexpected", f"SSDP answer {lines[0][:40]!r}")
    headers = dict(_header(line) for line in lines[1:] if ":" in line)
    location = headers.get("location", "")
    if urlsplit(location).scheme != "http" or not urlsplit(location).hostname:
        raise PortMapError("malformed", f"SSDP LOCATION {location[:80]!r}")
    return location


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _parse_xml(document: bytes) -> ElementTree.Element:
    if len(document) > MAX_DOCUMENT_BYTES:
        raise PortMapError("malformed", f"a gateway document of {len(document)} bytes")
    if b"<!DOCTYPE" in document.upper() or b"<!ENTITY" in document.upper():
        raise PortMapError("malformed", "a gateway document with a DOCTYPE")
    try:
        return ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        raise PortMapError("malformed", f"a gateway document: {error}") from None


def parse_description(document: bytes, location: str) -> Gateway:
    """The WAN connection service of the device description at `location` (control
    URLs are relative to it, or to its URLBase)."""
    root = _parse_xml(document)
    base = root.findtext(f"{_DEVICE_NS}URLBase") or location
    services = {
        (service.findtext(f"{_DEVICE_NS}serviceType") or "").strip(): (
            service.findtext(f"{_DEVICE_NS}controlURL") or ""
        ).strip()
        for service in root.iter(f"{_DEVICE_NS}service")
    }
    for wanted in WAN_SERVICES:
        control = services.get(wanted)
        if control:
            url = urljoin(base, control)
            if urlsplit(url).scheme != "http":
                raise PortMapError("malformed", f"control URL {url[:80]!r}")
            return Gateway(url, wanted)
    raise PortMapError("unexpected", "the gateway has no WAN connection service")


def _call(gateway: Gateway, action: str, arguments: dict[str, str]) -> SoapCall:
    body = _SOAP_ENVELOPE.format(
        action=action,
        service=gateway.service,
        arguments="".join(f"<{k}>{_escape(v)}</{k}>" for k, v in arguments.items()),
    ).encode()
    headers = {
        "Content-Type": 'text/xml; charset="utf-8"',
        "SOAPAction": f'"{gateway.service}#{action}"',
    }
    return SoapCall(action, headers, body)


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def external_address_call(gateway: Gateway) -> SoapCall:
    """GetExternalIPAddress."""
    return _call(gateway, "GetExternalIPAddress", {})


def add_mapping_call(
    gateway: Gateway,
    client: IPv4Address,
    internal_port: int,
    external_port: int,
    lifetime_s: int,
    description: str,
) -> SoapCall:
    """AddPortMapping of UDP `external_port` to `client`:`internal_port`."""
    return _call(
        gateway,
        "AddPortMapping",
        {
            "NewRemoteHost": "",
            "NewExternalPort": str(external_port),
            "NewProtocol": "UDP",
            "NewInternalPort": str(internal_port),
            "NewInternalClient": str(client),
            "NewEnabled": "1",
            "NewPortMappingDescription": description,
            "NewLeaseDuration": str(lifetime_s),
        },
    )


def delete_mapping_call(gateway: Gateway, external_port: int) -> SoapCall:
    """DeletePortMapping of UDP `external_port`."""
    return _call(
        gateway,
        "DeletePortMapping",
        {"NewRemoteHost": "", "NewExternalPort": str(external_port), "NewProtocol": "UDP"},
    )


def parse_answer(status: int, document: bytes, action: str) -> dict[str, str]:
    """The out-arguments of a SOAP answer to `action` (PortMapError for a fault, with
    the UPnP error code as `result`, or for anything else)."""
    root = _parse_xml(document)
    code = next((e.text for e in root.iter() if _local(e.tag) == "errorCode"), None)
    if status != 200 or code is not None:
        result = int(code) if code is not None and re.fullmatch(r"\d{1,4}", code) else None
        raise PortMapError("refused", f"{action}: HTTP {status}, UPnP error {code}", result=result)
    answer = next((e for e in root.iter() if _local(e.tag) == f"{action}Response"), None)
    if answer is None:
        raise PortMapError("unexpected", f"no {action}Response in the gateway's answer")
    return {_local(child.tag): (child.text or "").strip() for child in answer}


def parse_external_address(arguments: dict[str, str]) -> IPv4Address:
    """NewExternalIPAddress of a GetExternalIPAddress answer."""
    try:
        return IPv4Address(arguments.get("NewExternalIPAddress", ""))
    except ValueError:
        raise PortMapError("malformed", "no external address in the gateway's answer") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]
