// Faithful fixture: constructs seen in shipped ink scripts, written for Lore KB.
VAR met_kai = false
VAR player_name = "Ana"
VAR forceful = 1

=== start ===
Kai: Hello {player_name}, the tide is turning. #line:start_kai_01
Kai: You came back after all. # id: start_kai_02
My voice shakes{ forceful > 0:  with anger|; I'm unaccustomed to this}.
- { not met_kai:
    Kai: We have not met, I think.
  - else:
    Kai: Good to see you again.
  }
//*[Ask about the weather] commented out by the writer
-*[Ask about the ship]
    Kai: The <i>Meridian</i> sails at <b>dawn</b>. <color=red>Hurry.</color>
{->harbour|->market}
Error: the console flickers and dies.
Keystroke registered: ENTER
Target 1: the lighthouse.
Kai: That is all I know.
-> END

=== harbour ===
The harbour is quiet.
-> END

=== market ===
The market is loud.
-> END
