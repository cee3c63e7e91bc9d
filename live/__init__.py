"""Running a real home: protocol adapters (Loxone over MQTT, Growatt over Modbus TCP, InfluxDB),
the emulator that puts the twin behind the same protocols, and the live loop with its safety layer."""
