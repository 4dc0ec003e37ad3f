#!/bin/sh
# pretend simulation
exit 0
