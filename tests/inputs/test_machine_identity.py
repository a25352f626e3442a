"""The VM identity the handler's guards are keyed to (restore / clone)."""

from __future__ import annotations

from pathlib import Path

from snapshot_runtime.inputs.machine import VmIdentity, parse_role_guid, read_vm_identity

# The shape of the guest agent's /var/lib/waagent/HostingEnvironmentConfig.xml.
HOSTING_XML = """<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">
  <StoredCertificates />
  <Deployment name="d5a2b1c0" guid="{11111111-2222-3333-4444-555555555555}" incarnation="0">
    <Service name="vm-1" guid="{00000000-0000-0000-0000-000000000000}" />
    <ServiceInstance name="d5a2b1c0.0" guid="{66666666-7777-8888-9999-AAAAAAAAAAAA}" />
  </Deployment>
  <Incarnation number="1" instance="vm-1" guid="{BBBBBBBB-0000-0000-0000-000000000001}" />
  <Role guid="{D0D0D0D0-1234-5678-9ABC-DEF012345678}" name="vm-1" settleTimeSeconds="10" />
  <Role guid="{ffffffff-0000-0000-0000-000000000000}" name="second" />
</HostingEnvironmentConfig>
"""


def test_role_guid_is_the_first_role_element_without_braces() -> None:
    assert parse_role_guid(HOSTING_XML) == "d0d0d0d0-1234-5678-9abc-def012345678"


def test_role_guid_absent_or_unparseable() -> None:
    assert (
        parse_role_guid(
            "<HostingEnvironmentConfig><Deployment guid='{1}'/></HostingEnvironmentConfig>"
        )
        is None
    )
    assert parse_role_guid("<Role name='x'/>") is None
    assert parse_role_guid("<HostingEnvironmentConfig><Role guid=") is None
    assert parse_role_guid("") is None
    namespaced = '<h:Cfg xmlns:h="urn:x"><h:Role guid="{ABC-1}"/></h:Cfg>'
    assert parse_role_guid(namespaced) == "abc-1"


def test_identity_from_fixture_files(tmp_path: Path) -> None:
    uuid_file = tmp_path / "product_uuid"
    uuid_file.write_text("8F1A2B3C-0000-4D5E-9F00-112233445566\n")
    xml_file = tmp_path / "HostingEnvironmentConfig.xml"
    xml_file.write_text(HOSTING_XML)
    identity = read_vm_identity(product_uuid_path=str(uuid_file), hosting_config_path=str(xml_file))
    assert identity == VmIdentity(
        product_uuid="8f1a2b3c-0000-4d5e-9f00-112233445566",
        role_guid="d0d0d0d0-1234-5678-9abc-def012345678",
    )
    assert identity.key == (
        "product_uuid=8f1a2b3c-0000-4d5e-9f00-112233445566;"
        "role_guid=d0d0d0d0-1234-5678-9abc-def012345678"
    )


def test_identity_without_the_agent_file_is_the_product_uuid(tmp_path: Path) -> None:
    uuid_file = tmp_path / "product_uuid"
    uuid_file.write_text("8f1a2b3c-0000-4d5e-9f00-112233445566\n")
    identity = read_vm_identity(
        product_uuid_path=str(uuid_file), hosting_config_path=str(tmp_path / "absent.xml")
    )
    assert identity.role_guid is None
    assert identity.key == "product_uuid=8f1a2b3c-0000-4d5e-9f00-112233445566;role_guid=-"


def test_no_identity_when_nothing_is_readable(tmp_path: Path) -> None:
    zero = tmp_path / "product_uuid"
    zero.write_text("00000000-0000-0000-0000-000000000000\n")  # firmware without one
    identity = read_vm_identity(
        product_uuid_path=str(zero), hosting_config_path=str(tmp_path / "absent.xml")
    )
    assert identity == VmIdentity(None, None) and identity.key is None
    directory = read_vm_identity(product_uuid_path=str(tmp_path), hosting_config_path=str(tmp_path))
    assert directory.key is None


def test_a_clone_or_restore_changes_the_key(tmp_path: Path) -> None:
    """A clone keeps /etc/machine-id but gets a new VM id (product UUID) and Role GUID."""
    source = VmIdentity("8f1a2b3c-0000-4d5e-9f00-112233445566", "d0d0d0d0-1234")
    assert VmIdentity("9e2b3c4d-0000-4d5e-9f00-112233445566", "d0d0d0d0-1234").key != source.key
    assert VmIdentity("8f1a2b3c-0000-4d5e-9f00-112233445566", "e1e1e1e1-1234").key != source.key
    assert VmIdentity("8f1a2b3c-0000-4d5e-9f00-112233445566", "d0d0d0d0-1234").key == source.key
