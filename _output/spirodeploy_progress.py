"""
Plain progress lines for spiro-deploy's runner
==============================================

``salt-run spirodeploy.deploy`` (and ``spirodeploy.rollout``) report their
progress as runner progress events, one per line the ``spiro-deploy``
command would print.  Salt prints a progress event with the outputter the
event names, and by default that is ``nested``: eight lines per progress
line (``event:``, ``_stamp:``, ``message:``, ``suffix:``).  The runner
names this outputter instead, so each progress line prints as itself:

.. code-block:: text

    Deploying bundle
    Highstating 2000 minions: web00000, web00001, … (+1998)
    == web00000: 45 ok, 5 changed, 0 failed, 210 ms ==

Anything else it is given (not a progress event) is printed as ``nested``
would.  ``--out`` on the command line still wins, as for any outputter.

CLI Example:

.. code-block:: bash

    salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject
"""

__virtualname__ = "spirodeploy_progress"


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Print a progress event's ``message`` as one line; anything else as ``nested``.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.deploy myproject prod --out=spirodeploy_progress
    """
    message = _message(data)
    if message is not None:
        return message
    # The loader gives outputters the other outputters as __salt__.
    return __salt__["nested"](data, **kwargs)


def _message(data):
    # Salt hands a progress event over as {"suffix": "progress", "event": {...}}.
    if isinstance(data, dict) and data.get("suffix") == "progress":
        event = data.get("event")
        if isinstance(event, dict) and isinstance(event.get("message"), str):
            return event["message"]
    return None
