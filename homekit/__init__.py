"""The HomeKit bridge: the iPhone Home app as the operator's screen.

A HAP-python bridge process that shows the platform through AlarmsServer's feed
(:mod:`streams.homekit_feed`) and turns the phone's writes into heating requests through
the heating controller, the same path ``heater heat`` takes. It never touches a relay,
and never imports the adapters or the simulator.
"""
