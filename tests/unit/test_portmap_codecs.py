"""The port mapping codecs against known-answer bytes laid out as RFC 6886 (NAT-PMP)
section 3, RFC 6887 (PCP) sections 7 and 11.1 and the UPnP IGD WANIPConnection SOAP
specify them, and against garbage: short, wrong version, wrong opcode, someone else's
nonce, refusals, documents that are not XML or carry a DOCTYPE."""

import itertools
from ipaddress import IPv4Address

import pytest

from pilotif.net.portmap import natpmp, pcp, upnp
from pilotif.net.portmap.errors import PortMapError

NONCE = bytes(range(1, 13))

# -- NAT-PMP ---------------------------------------------------------------------------


def test_natpmp_requests_are_laid_out_as_rfc_6886() -> None:
    assert natpmp.external_address_request() == bytes.fromhex("0000")
    # version 0, opcode 1 (UDP), reserved, internal 51820, suggested 51820, 7200 s.
    assert natpmp.map_udp_request(51820, 51820, 7200) == bytes.fromhex(
        "0001 0000 ca6c ca6c 00001c20"
    )
    assert natpmp.map_udp_request(51820, 0, 0) == bytes.fromhex("0001 0000 ca6c 0000 00000000")


def test_natpmp_answers_are_read_as_rfc_6886() -> None:
    external = natpmp.parse_external_address(bytes.fromhex("0080 0000 00000e10 c6120001"))
    assert external == natpmp.ExternalAddress(3600, IPv4Address("198.18.0.1"))
    mapped = natpmp.parse_map_udp(bytes.fromhex("0081 0000 00000e10 ca6c d431 00001c20"))
    assert mapped == natpmp.Mapped(3600, 51820, 54321, 7200)


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (b"", "truncated"),
        (bytes.fromhex("00"), "truncated"),
        (bytes.fromhex("0081 0000 00000e10 ca6c"), "truncated"),
        (bytes.fromhex("0181 0000 00000e10 ca6c d431 00001c20"), "unexpected"),
        (bytes.fromhex("0082 0000 00000e10 ca6c d431 00001c20"), "unexpected"),
        (bytes.fromhex("0001 0000 ca6c ca6c 00001c20"), "unexpected"),
        (bytes.fromhex("0081 0003 00000e10 ca6c d431 00001c20"), "refused"),
        (bytes.fromhex("0081 0002"), "refused"),
    ],
)
def test_natpmp_garbage_and_refusals_are_port_map_errors(answer: bytes, code: str) -> None:
    with pytest.raises(PortMapError) as raised:
        natpmp.parse_map_udp(answer)
    assert raised.value.code == code


def test_a_natpmp_refusal_carries_its_result_code() -> None:
    # What miniupnpd 2.3.1 answered in the lab when its own external address was one of
    # 198.18.0.0/15 (reserved: "Port forwarding is impossible").
    answered = bytes.fromhex("00810003000028f0ca6cca6c00000078")
    with pytest.raises(PortMapError) as raised:
        natpmp.parse_map_udp(answered)
    assert raised.value.result == natpmp.RESULT_NETWORK_FAILURE


# -- PCP -------------------------------------------------------------------------------

PCP_MAP_REQUEST = bytes.fromhex(
    "02 01 0000"  # version 2, R=0 opcode MAP, reserved
    "00001c20"  # requested lifetime 7200 s
    "00000000000000000000ffffc6130102"  # client ::ffff:198.19.1.2
    "0102030405060708090a0b0c"  # nonce
    "11 000000"  # UDP, reserved
    "ca6c ca6c"  # internal, suggested external port
    "00000000000000000000ffff00000000"  # suggested external address ::ffff:0.0.0.0
)
PCP_MAP_ANSWER = bytes.fromhex(
    "02 81 00 00"  # version 2, R=1 opcode MAP, reserved, result SUCCESS
    "00001c20"  # lifetime
    "00000e10"  # epoch
    "000000000000000000000000"  # reserved
    "0102030405060708090a0b0c"
    "11 000000"
    "ca6c d431"
    "00000000000000000000ffffc612000b"  # assigned ::ffff:198.18.0.11
)


def test_the_pcp_map_request_is_laid_out_as_rfc_6887() -> None:
    request = pcp.map_udp_request(IPv4Address("198.19.1.2"), NONCE, 51820, 51820, 7200)
    assert request == PCP_MAP_REQUEST
    assert len(request) == pcp.REQUEST_BYTES == 60


def test_the_pcp_map_answer_is_read_as_rfc_6887() -> None:
    mapped = pcp.parse_map_udp(PCP_MAP_ANSWER, NONCE)
    assert mapped == pcp.PcpMapped(3600, 7200, 51820, 54321, IPv4Address("198.18.0.11"))


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (b"", "truncated"),
        (PCP_MAP_ANSWER[:23], "truncated"),
        (PCP_MAP_ANSWER[:59], "truncated"),
        (_with(PCP_MAP_ANSWER, 0, b"\x03"), "unexpected"),
        (_with(PCP_MAP_ANSWER, 1, b"\x01"), "unexpected"),
        (_with(PCP_MAP_ANSWER, 24, bytes(12)), "unexpected"),
        (_with(PCP_MAP_ANSWER, 36, b"\x06"), "unexpected"),
        (_with(PCP_MAP_ANSWER, 3, b"\x08"), "refused"),
        # A NAT-PMP gateway's answer to a PCP request: version 0, UNSUPP_VERSION.
        (bytes.fromhex("0080 0001 00000e10 00000000"), "unsupported_version"),
    ],
)
def test_pcp_garbage_and_refusals_are_port_map_errors(answer: bytes, code: str) -> None:
    with pytest.raises(PortMapError) as raised:
        pcp.parse_map_udp(answer, NONCE)
    assert raised.value.code == code


def test_no_answer_prefix_or_random_bytes_raise_anything_but_port_map_errors() -> None:
    for length in range(len(PCP_MAP_ANSWER)):
        with pytest.raises(PortMapError):
            pcp.parse_map_udp(PCP_MAP_ANSWER[:length], NONCE)
    for junk in itertools.islice(itertools.product(range(0, 256, 37), repeat=3), 200):
        for parse in (natpmp.parse_map_udp, natpmp.parse_external_address):
            with pytest.raises(PortMapError):
                parse(bytes(junk) * 5)
        with pytest.raises(PortMapError):
            pcp.parse_map_udp(bytes(junk) * 20, NONCE)


# -- UPnP IGD --------------------------------------------------------------------------

SSDP_ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"CACHE-CONTROL: max-age=120\r\n"
    b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"USN: uuid:3d3cec3a::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"EXT:\r\n"
    b"SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\n"
    b"LOCATION: http://198.19.1.1:45883/rootDesc.xml\r\n"
    b"\r\n"
)
DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/IPConn</controlURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"""
GATEWAY = upnp.Gateway(
    "http://198.19.1.1:45883/ctl/IPConn", "urn:schemas-upnp-org:service:WANIPConnection:1"
)


def test_the_ssdp_search_and_answer() -> None:
    request = upnp.search_request()
    assert request.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b'MAN: "ssdp:discover"\r\n' in request and request.endswith(b"\r\n\r\n")
    assert b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" in request
    assert upnp.parse_search_answer(SSDP_ANSWER) == "http://198.19.1.1:45883/rootDesc.xml"


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"\xff\xfe garbage",
        b"NOTIFY * HTTP/1.1\r\nLOCATION: http://198.19.1.1/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nLOCATION: http:///x\r\n\r\n",
    ],
)
def test_ssdp_garbage_is_a_port_map_error(answer: bytes) -> None:
    with pytest.raises(PortMapError):
        upnp.parse_search_answer(answer)


def test_the_description_names_the_wan_ip_connection_control_url() -> None:
    location = "http://198.19.1.1:45883/rootDesc.xml"
    assert upnp.parse_description(DESCRIPTION, location) == GATEWAY


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<root",
        DESCRIPTION.replace(b"WANIPConnection", b"Nothing"),
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><root>&a;</root>',
        b"<root>" + b" " * upnp.MAX_DOCUMENT_BYTES + b"</root>",
        DESCRIPTION.replace(b"/ctl/IPConn", b"ftp://198.19.1.1/x"),
    ],
)
def test_description_garbage_is_a_port_map_error(document: bytes) -> None:
    with pytest.raises(PortMapError):
        upnp.parse_description(document, "http://198.19.1.1:45883/rootDesc.xml")


def test_the_soap_calls_are_those_of_wan_ip_connection() -> None:
    call = upnp.add_mapping_call(
        GATEWAY, IPv4Address("198.19.1.2"), 51820, 51820, 3600, "pilotif <node>"
    )
    assert call.headers["SOAPAction"] == (
        '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    )
    assert call.body.startswith(b'<?xml version="1.0"?>\r\n<s:Envelope')
    for part in (
        b'<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">',
        b"<NewRemoteHost></NewRemoteHost><NewExternalPort>51820</NewExternalPort>",
        b"<NewProtocol>UDP</NewProtocol><NewInternalPort>51820</NewInternalPort>",
        b"<NewInternalClient>198.19.1.2</NewInternalClient><NewEnabled>1</NewEnabled>",
        b"<NewPortMappingDescription>pilotif &lt;node&gt;</NewPortMappingDescription>",
        b"<NewLeaseDuration>3600</NewLeaseDuration>",
    ):
        assert part in call.body
    delete = upnp.delete_mapping_call(GATEWAY, 51820)
    assert b"<u:DeletePortMapping" in delete.body and b">51820<" in delete.body
    assert b"<u:GetExternalIPAddress" in upnp.external_address_call(GATEWAY).body


def test_soap_answers_and_faults() -> None:
    answer = (
        b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:'
        b'WANIPConnection:1"><NewExternalIPAddress>198.18.0.11</NewExternalIPAddress>'
        b"</u:GetExternalIPAddressResponse></s:Body></s:Envelope>"
    )
    arguments = upnp.parse_answer(200, answer, "GetExternalIPAddress")
    assert upnp.parse_external_address(arguments) == IPv4Address("198.18.0.11")
    fault = (
        b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
        b'<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718'
        b"</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError>"
        b"</detail></s:Fault></s:Body></s:Envelope>"
    )
    with pytest.raises(PortMapError) as raised:
        upnp.parse_answer(500, fault, "AddPortMapping")
    assert raised.value.code == "refused" and raised.value.result == 718
    with pytest.raises(PortMapError):
        upnp.parse_answer(200, answer, "AddPortMapping")
    with pytest.raises(PortMapError):
        upnp.parse_external_address({"NewExternalIPAddress": "not an address"})
