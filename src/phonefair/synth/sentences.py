"""Phonetically rich English sentences for the synthetic corpus.

Written for phonefair (public domain / MIT like the rest of the package); none is taken from TIMIT, the Harvard
sentences or another corpus. Together they contain every ARPABET-39 phoneme many times over (a test checks the
coverage after synthesis with every accent voice). They are short (6 to 14 words) so that one utterance is a few
seconds of speech.
"""

from __future__ import annotations

__all__ = ["SENTENCES", "sentence_ids"]

SENTENCES: tuple[str, ...] = (
    "The young judge chose a cheap orange jacket for the journey.",
    "Thick fog rolled over the valley while the boys were asleep.",
    "My brother measured the beige garage with a yellow ruler.",
    "She could not put the wool back in the wooden box.",
    "A loud cow wandered south around the town fountain.",
    "Joyful voices filled the noisy hall after the royal show.",
    "Nobody knew why the old goat ate the soap.",
    "The usual vision test took an hour at the clinic.",
    "Please bring the long string and the ring to the king.",
    "Father thought the path through the thorn bushes was smooth.",
    "Whose shoes are these, and who will choose the blue ones?",
    "Every child should check the weather before the hike.",
    "The pleasure of leisure is rarely measured in treasure.",
    "Bright kites hung high above the quiet island village.",
    "Her purple shirt turned dirty during the early storm.",
    "Cook the sugar slowly, or the pudding will burn.",
    "Six thin sticks were stuck in the thick black mud.",
    "The hungry dog dug a hole under the big oak tree.",
    "We watched the ships sail past the rocky shore at dawn.",
    "Judy enjoyed the gentle rhythm of the church bells.",
    "A few new tools were put away in the boot of the car.",
    "They paid the mayor to fix the broken gate today.",
    "Open the window, then throw the yellow pillow over there.",
    "The toy boy pointed at the oily coin in the soil.",
    "Uncle Bob jumped over the fence and lost his cap.",
    "Which witch wished for a rich and exciting future?",
    "The zebra and the lizard rested in the hazy sunshine.",
    "Ethan's fifth birthday was on a Thursday in the north.",
    "Good books should be read by a warm fire.",
    "How about a round of pie and cream at the cabin?",
    "The garden hose was coiled beside the green fence.",
    "Ask the thirsty nurse to fetch some water from the well.",
    "My cousin's azure scarf was a casual choice for the beach.",
    "Grandmother sang a lovely tune about a lonely sailor.",
    "Quick workers packed the heavy boxes into the van.",
    "Daisy noticed that the clock in the hallway had stopped.",
    "The pupil looked at the huge map of the universe.",
    "Although it rained, the cheerful crowd stayed until evening.",
    "The engineer changed the gauge on the orange engine.",
    "Mothers and fathers gathered together for the feather dance.",
    "A vicious wind shook the rusty sign near the bridge.",
    "Three thousand thrushes sang through the warm spring night.",
    "Put the wet towels outside to dry in the afternoon sun.",
    "The boy with the toy trumpet annoyed the old neighbour.",
    "Pour the juice into the glass and add a slice of lime.",
    "The lawyer thought about the awkward audit all autumn.",
    "Wash the dishes, and then sweep the kitchen floor.",
    "Her genuine smile made the judge forget his anger.",
    "Playful puppies chased a yellow ball across the lawn.",
    "An orchestra played while the audience sat in silence.",
    "The sky turned golden as the boats came home.",
    "Heavy clouds hid the moon above the sleepy harbour.",
    "I would like a cup of tea with milk and honey.",
    "Zoe's vision of the future was bold and strange.",
    "Our house is near the mouth of the brown river.",
    "The shepherd pushed the sheep through the narrow gap.",
    "Careful drivers stop at the corner before they turn.",
    "Jim bought cheese, fish and bread at the village shop.",
    "The carpenter measured twice and cut the board once.",
    "A shy girl whispered a joke to her aunt.",
    "Ducks and geese swam along the edge of the pond.",
    "Nothing is worth more than a thoughtful friend.",
    "The baker's oven smelled of butter, cinnamon and toast.",
    "Keep the red envelope hidden until the party begins.",
    "Vivid images of the voyage stayed with the crew for years.",
    "Each morning the postman whistles as he walks to work.",
)


def sentence_ids() -> list[str]:
    """Stable ids ``s001`` … for :data:`SENTENCES` (used in recording ids)."""
    return [f"s{i + 1:03d}" for i in range(len(SENTENCES))]
