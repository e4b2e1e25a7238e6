# chapter: 2
# region: Saltreach
# title: Council Night

-> hall_of_oars

=== hall_of_oars ===
Ysolde: Fourth night of Saltmonth, 412 TC. Nine oars on the wall, nine seats at the table. I write what is said.
Idris: The Kessel Glass was taken from our own strongroom. I want it back before the Long Ebb ends.
* [Listen to the Second Oar] -> hall_of_oars.blockade
* [Ask the Guildmaster what he offers] -> hall_of_oars.reward
+ [Watch Sefa Orrin] -> lighthouse_report

= blockade
Aurel: Close the Mirewood creeks. Every cutter we own, tonight. # mood: tense
Idris: A blockade starves the fens, Aurel. We did that once.
Aurel: And it worked, for a while.
-> lighthouse_report

= reward
Corvane: The Guild offers five hundred salt marks for the glass, returned with its seal whole.
Ysolde: Let the record show the Guildmaster said "whole".
-> lighthouse_report

=== lighthouse_report ===
Sefa: One matter from Fellstack. The lens of the Orrin Light has been fouled on several nights since spring.
Aurel: Salt spray. It happens every year.
Sefa: It does not happen every year, Second Oar. I keep the log.
* [Ask Sefa how many nights] -> vote
* [Say nothing] -> vote

=== vote ===
Idris: Enough. We vote. Blockade, or we send the surveyor into Mirewood with my letter.
Ysolde: Six oars against the blockade, three for. The surveyor goes south.
Idris: Wren Aldmoor, you carry the Warden's safe passage. Do not lose it in a creek.
+ [Accept the letter]
    Wren: I'll leave at low water.
    -> farewell
+ [Ask who voted for the blockade]
    Ysolde: The record is public. Ask me again when it matters.
    -> farewell

=== farewell ===
Sefa: If your road bends north, surveyor, Tallow Rock has a lamp and a kettle.
Ysolde: Council rises at the second bell. End of minutes.
-> END
