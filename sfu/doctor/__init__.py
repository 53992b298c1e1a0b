"""The NAT doctor: what the NAT in front of the media port does, and what that means.

- :mod:`sfu.doctor.probe`: the sans-IO probe (STUN with RFC 5780 from the media socket and a
  fresh socket), producing :class:`Observations`;
- :mod:`sfu.doctor.facts`: observations to named facts with evidence (pure);
- :mod:`sfu.doctor.verdict`: facts to one line, from a small decision table (pure);
- :mod:`sfu.doctor.run`: the asyncio driver and ``sfu doctor``'s own sockets;
- :mod:`sfu.doctor.live`: the same through the running server's engine sockets (/api/doctor,
  the start-up line);
- :mod:`sfu.doctor.command`: the ``sfu doctor`` command.

See docs/doctor.md. Nothing is imported here: ``sfu --help`` loads only the command module.
"""
