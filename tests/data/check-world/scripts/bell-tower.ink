# chapter: 3
# region: Lowmarsh

=== tower ===
Tamsin: The bell is cold.
Maren: They say this bell was cast at the Hollow Chapel.
-> END
